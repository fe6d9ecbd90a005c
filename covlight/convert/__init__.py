"""Models trained by other tools, converted to covlight run folders (`python -m covlight.convert`)."""
