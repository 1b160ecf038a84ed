"""What the CLI's own commands do (``replay``/``detect``, ``demo``), kept apart from the engine they
drive (ingest, pipeline, stream service, miniapp). ``detector_app.cli`` parses flags and calls these;
``bench`` and ``simulate`` have their own packages."""
