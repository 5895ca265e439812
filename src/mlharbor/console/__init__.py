"""The web console at /console/: the resources of the account a user signed in to, live views of stream
processors, training curves, KVS playback, face collections. Server-rendered HTML (Jinja2), SVG charts drawn
here, a little JavaScript of our own; actions call the same operations as the API (``invoke.py``)."""
