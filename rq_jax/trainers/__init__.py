"""One linear, sectioned trainer per stage; each train step is a pure jitted function."""
