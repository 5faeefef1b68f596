"""The model hub workflow: convert the official checkpoint, publish model folders, maintain the registry.

Run as `python -m hub convert-official|publish|registry ...` from the repository root. It imports btembed;
btembed never imports hub.
"""
