// The service's web page: transcribe, compare and live modes over the public API only (relative URLs, so the page
// works under any route prefix). No libraries, nothing fetched from another origin.
"use strict";

const $ = (id) => document.getElementById(id);
const apiUrl = (path) => new URL("../" + path, location.href);
const state = { audio: null, name: "", duration: null, samples: null, recorder: null, live: null };

// --- the API ---------------------------------------------------------------------------------------------------

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

async function call(path, options = {}) {
  const response = await fetch(apiUrl(path), { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.ok) return response;
  let message = response.statusText;
  try {
    message = (await response.json()).error.message;
  } catch (_) { /* not OpenAI's error JSON: keep the status text */ }
  throw new ApiError(response.status, message, response.headers.get("Retry-After"));
}

function showError(error) {
  const box = $("error");
  if (!error) {
    box.hidden = true;
    return;
  }
  let text = error.status ? `${error.status}: ${error.message}` : String(error.message || error);
  if (error.retryAfter) text += ` (retry after ${error.retryAfter} s)`;
  if (error.status === 401) text += " Enter an API key above.";
  box.textContent = text;
  box.hidden = false;
  if (error.status === 401) $("api-key").focus();
}

async function transcribe(model, format, language) {
  const form = new FormData();
  form.append("file", state.audio, state.name || "audio");
  form.append("model", model);
  form.append("response_format", format);
  if (language) form.append("language", language);
  const started = performance.now();
  const response = await call("v1/audio/transcriptions", { method: "POST", body: form });
  const body = format.endsWith("json") ? await response.json() : await response.text();
  return { body, latency: (performance.now() - started) / 1000 };
}

async function loadModels() {
  try {
    const models = (await (await call("v1/models")).json()).data;
    for (const select of [$("model"), $("live-model")]) {
      select.replaceChildren(...models.map((m) => new Option(`${m.id} (${m.backend})`, m.id)));
    }
    const roots = [...new Map(models.map((m) => [m.root, m])).values()];
    $("compare-models").replaceChildren($("compare-models").firstElementChild, ...roots.map((m, i) => {
      const label = document.createElement("label");
      label.innerHTML = `<input type="checkbox" value="${m.root}" ${i < 2 ? "checked" : ""}> ${m.root}`;
      return label;
    }));
    showError(null);
  } catch (error) {
    showError(error);
  }
}

// --- audio: a file, a drop, or the microphone --------------------------------------------------------------------

async function setAudio(blob, name) {
  state.audio = blob;
  state.name = name;
  state.samples = null;
  state.duration = null;
  $("audio-name").textContent = `${name} (${Math.round(blob.size / 1024)} KiB)`;
  $("player").src = URL.createObjectURL(blob);
  $("player").hidden = false;
  try {
    const decoded = await new AudioContext().decodeAudioData(await blob.arrayBuffer());
    state.samples = decoded.getChannelData(0);
    state.duration = decoded.duration;
  } catch (_) { /* a container the browser cannot decode: the server still can, the timeline shows no waveform */ }
}

async function toggleRecording() {
  if (state.recorder) {
    state.recorder.stop();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const recorder = new MediaRecorder(stream);
    const parts = [];
    recorder.ondataavailable = (e) => parts.push(e.data);
    recorder.onstop = () => {
      stream.getTracks().forEach((t) => t.stop());
      state.recorder = null;
      $("record").textContent = "Record";
      setAudio(new Blob(parts, { type: recorder.mimeType }), "recording.webm");
    };
    recorder.start();
    state.recorder = recorder;
    $("record").textContent = "Stop recording";
  } catch (error) {
    showError(error);
  }
}

// --- transcribe ------------------------------------------------------------------------------------------------

function seconds(t) {
  return t.toFixed(2) + " s";
}

async function onTranscribe(event) {
  event.preventDefault();
  if (!state.audio) return showError(new Error("Pick, drop or record some audio first."));
  $("transcribe").disabled = true;
  try {
    const { body, latency } = await transcribe($("model").value, "verbose_json", $("language").value.trim());
    const duration = body.duration || state.duration || 0;
    $("stats").textContent = `latency ${seconds(latency)} · audio ${seconds(duration)} · real-time factor ` +
      (duration ? (latency / duration).toFixed(3) : "-") + ` · language ${body.language || "-"}`;
    $("text").textContent = body.text;
    $("segments").tBodies[0].replaceChildren(...(body.segments || []).map((s) => {
      const row = document.createElement("tr");
      for (const value of [seconds(s.start), seconds(s.end), s.text.trim()]) row.insertCell().textContent = value;
      return row;
    }));
    $("result").hidden = false;
    drawTimeline(body.segments || [], duration);
    showError(null);
  } catch (error) {
    showError(error);
  } finally {
    $("transcribe").disabled = false;
  }
}

function drawTimeline(segments, duration) {
  const canvas = $("timeline");
  canvas.width = canvas.clientWidth * devicePixelRatio;
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, x = (t) => (t / (duration || 1)) * w;
  g.clearRect(0, 0, w, h);
  g.fillStyle = "rgba(11, 92, 173, 0.15)";
  for (const s of segments) g.fillRect(x(s.start), 0, Math.max(1, x(s.end) - x(s.start)), h);
  if (state.samples) {
    const step = Math.max(1, Math.floor(state.samples.length / w));
    g.strokeStyle = "#0b5cad";
    g.beginPath();
    for (let i = 0; i < w; i++) {
      let peak = 0;
      for (let j = i * step; j < (i + 1) * step && j < state.samples.length; j++) peak = Math.max(peak, Math.abs(state.samples[j]));
      g.moveTo(i, h / 2 - peak * h / 2);
      g.lineTo(i, h / 2 + peak * h / 2);
    }
    g.stroke();
  }
  g.fillStyle = "#1b1b1b";
  g.font = `${11 * devicePixelRatio}px system-ui`;
  for (const s of segments) g.fillText(s.start.toFixed(1), x(s.start) + 2, 12 * devicePixelRatio);
}

async function download(format) {
  try {
    const { body } = await transcribe($("model").value, format, $("language").value.trim());
    const text = typeof body === "string" ? body : JSON.stringify(body, null, 2);
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([text]));
    link.download = state.name.replace(/\.[^.]*$/, "") + "." + (format === "verbose_json" ? "json" : format);
    link.click();
  } catch (error) {
    showError(error);
  }
}

// --- compare ---------------------------------------------------------------------------------------------------

const words = (text) => text.toLowerCase().replace(/[^\p{L}\p{N}' ]+/gu, " ").split(/\s+/).filter(Boolean);

function editDistance(a, b) {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) next[j] = Math.min(row[j] + 1, next[j - 1] + 1, row[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    row = next;
  }
  return row[b.length];
}

function diffHtml(base, other) {
  // Words of `other` against `base` by their longest common subsequence: <del> what base has, <ins> what other adds.
  const a = base.split(/\s+/).filter(Boolean), b = other.split(/\s+/).filter(Boolean);
  const key = (w) => words(w).join(" ");
  const lcs = Array.from({ length: a.length + 1 }, () => new Array(b.length + 1).fill(0));
  for (let i = a.length - 1; i >= 0; i--)
    for (let j = b.length - 1; j >= 0; j--)
      lcs[i][j] = key(a[i]) === key(b[j]) ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  const out = [], esc = (w) => w.replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" })[c]);
  let i = 0, j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && key(a[i]) === key(b[j])) { out.push(esc(b[j])); i++; j++; }
    else if (j < b.length && (i >= a.length || lcs[i][j + 1] >= lcs[i + 1][j])) out.push(`<ins>${esc(b[j++])}</ins>`);
    else out.push(`<del>${esc(a[i++])}</del>`);
  }
  return out.join(" ");
}

async function onCompare() {
  if (!state.audio) return showError(new Error("Pick, drop or record some audio first."));
  const models = [...$("compare-models").querySelectorAll("input:checked")].map((i) => i.value);
  if (models.length < 2) return showError(new Error("Pick at least two models."));
  $("compare").disabled = true;
  const columns = models.map((model) => {
    const article = document.createElement("article");
    article.innerHTML = `<h3>${model}</h3><p class="stats">running...</p><p class="transcript"></p>`;
    article.dataset.model = model;
    return article;
  });
  $("comparison").replaceChildren(...columns);
  const results = await Promise.allSettled(models.map((m) => transcribe(m, "json", "")));
  const reference = words($("reference").value);
  const base = results[0].status === "fulfilled" ? results[0].value.body.text : "";
  results.forEach((result, i) => {
    const [stats, text] = columns[i].querySelectorAll("p");
    if (result.status === "rejected") {
      stats.textContent = `error ${result.reason.status || ""}: ${result.reason.message}`;
      return;
    }
    const { body, latency } = result.value;
    const wer = reference.length ? ` · WER ${(100 * editDistance(reference, words(body.text)) / reference.length).toFixed(1)} %` : "";
    stats.textContent = `latency ${seconds(latency)}${wer}`;
    text.innerHTML = i === 0 ? diffHtml(body.text, body.text) : diffHtml(base, body.text);
  });
  $("compare").disabled = false;
  showError(null);
}

// --- live: the microphone over the realtime WebSocket -------------------------------------------------------------

function pcm16Base64(floats) {
  const bytes = new Uint8Array(floats.length * 2);
  const view = new DataView(bytes.buffer);
  floats.forEach((v, i) => view.setInt16(i * 2, Math.max(-1, Math.min(1, v)) * 0x7fff, true));
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

async function startLive() {
  const url = apiUrl("v1/realtime?intent=transcription");
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const key = $("api-key").value.trim();
  const socket = new WebSocket(url, ["realtime", ...(key ? ["openai-insecure-api-key." + key] : [])]);
  const live = { socket, partial: {}, stoppedAt: {} };
  state.live = live;
  socket.onmessage = (message) => onLiveEvent(live, JSON.parse(message.data));
  socket.onclose = (e) => { if (state.live === live) stopLive(e.code === 1000 ? null : new Error(`The session closed (${e.code}) ${e.reason}`)); };
  await new Promise((resolve, reject) => { socket.onopen = resolve; socket.onerror = () => reject(new Error("The realtime WebSocket could not open.")); });
  socket.send(JSON.stringify({ type: "session.update", session: { type: "transcription", audio: { input: {
    format: { type: "audio/pcm", rate: 24000 }, transcription: { model: $("live-model").value } } } } }));
  live.stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false } });
  live.context = new AudioContext({ sampleRate: 24000 });
  const source = live.context.createMediaStreamSource(live.stream);
  live.processor = live.context.createScriptProcessor(2048, 1, 1);
  live.processor.onaudioprocess = (e) => {
    if (socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "input_audio_buffer.append", audio: pcm16Base64(e.inputBuffer.getChannelData(0)) }));
  };
  source.connect(live.processor);
  live.processor.connect(live.context.destination);
  $("live-start").disabled = true;
  $("live-stop").disabled = false;
  $("live-state").textContent = "listening";
}

function onLiveEvent(live, event) {
  const item = event.item_id;
  switch (event.type) {
    case "input_audio_buffer.speech_started":
      $("live-state").textContent = "speaking";
      $("live-state").className = "speaking";
      live.partial[item] = "";
      break;
    case "input_audio_buffer.speech_stopped":
      $("live-state").textContent = "silence";
      $("live-state").className = "";
      live.stoppedAt[item] = performance.now();
      break;
    case "conversation.item.input_audio_transcription.delta":
      live.partial[item] = (live.partial[item] || "") + event.delta;
      $("live-partial").textContent = live.partial[item];
      break;
    case "conversation.item.input_audio_transcription.completed": {
      const li = document.createElement("li");
      const waited = live.stoppedAt[item] ? ` (${Math.round(performance.now() - live.stoppedAt[item])} ms after the end of speech)` : "";
      li.textContent = event.transcript + waited;
      $("live-finals").append(li);
      $("live-partial").textContent = "";
      break;
    }
    case "conversation.item.input_audio_transcription.failed":
    case "error":
      showError(new Error((event.error && event.error.message) || "error"));
      break;
  }
}

function stopLive(error) {
  const live = state.live;
  state.live = null;
  if (live) {
    if (live.processor) live.processor.disconnect();
    if (live.context) live.context.close();
    if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
    if (live.socket.readyState <= WebSocket.OPEN) live.socket.close(1000);
  }
  $("live-start").disabled = false;
  $("live-stop").disabled = true;
  $("live-state").textContent = "off";
  $("live-state").className = "";
  if (error) showError(error);
}

// --- wiring --------------------------------------------------------------------------------------------------------

function selectTab(tab) {
  for (const t of document.querySelectorAll('[role="tab"]')) {
    t.setAttribute("aria-selected", String(t === tab));
    $(t.getAttribute("aria-controls")).hidden = t !== tab;
  }
  $("audio-source").hidden = tab.id === "tab-live";
}

document.querySelectorAll('[role="tab"]').forEach((tab) => tab.addEventListener("click", () => selectTab(tab)));
$("api-key").value = sessionStorage.getItem("stt-api-key") || "";
$("api-key").addEventListener("change", () => { sessionStorage.setItem("stt-api-key", $("api-key").value.trim()); loadModels(); });
$("file").addEventListener("change", () => { const f = $("file").files[0]; if (f) setAudio(f, f.name); });
$("drop").addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
$("drop").addEventListener("dragover", (e) => { e.preventDefault(); $("drop").classList.add("over"); });
$("drop").addEventListener("dragleave", () => $("drop").classList.remove("over"));
$("drop").addEventListener("drop", (e) => {
  e.preventDefault();
  $("drop").classList.remove("over");
  const f = e.dataTransfer.files[0];
  if (f) setAudio(f, f.name);
});
$("record").addEventListener("click", toggleRecording);
$("transcribe-form").addEventListener("submit", onTranscribe);
document.querySelectorAll("[data-format]").forEach((b) => b.addEventListener("click", () => download(b.dataset.format)));
$("compare").addEventListener("click", onCompare);
$("live-start").addEventListener("click", () => startLive().catch((e) => stopLive(e)));
$("live-stop").addEventListener("click", () => stopLive(null));
loadModels();
