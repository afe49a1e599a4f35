"""Planning a run before renting it: chip specs, compile targets without chips, FLOP counts, rooflines."""
