from serve_app.batch.job import main

main()
