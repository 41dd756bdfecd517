"""biom3d in the browser: a FastAPI server and a static page (`biom3d gui`)."""
