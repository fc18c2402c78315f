"""`ddpm serve`: a page to watch, steer and edit trained models live (server.py, page.html)."""
