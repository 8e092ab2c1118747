"""The Flower side of the server: the ServerApp (``app``) and its run report (``report``), apart from the engine."""
