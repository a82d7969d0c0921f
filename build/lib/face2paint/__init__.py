"""face2paint: photos in, anime-style portraits out, faces kept intact."""

__version__ = "0.1.0"
