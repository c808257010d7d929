"""The digital twin: sintered microstructures and a FIB-SEM image simulator — later issues."""
