"""Realtime transcription over WebSocket: OpenAI's Realtime protocol, turn detection and partial text, on top of
the same transcription core as the file routes."""
