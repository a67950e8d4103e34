"""Writers of the output formats; each module writes one format, atomically, with numpy alone."""
