"""imagebm: the image experiments of Du & Mordatch (2019) on trajebm's sampler and trainer."""
