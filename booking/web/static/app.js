// (to be written) enhances the pages; everything works without it.
