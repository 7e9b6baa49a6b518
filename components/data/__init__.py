"""Reading, de-identifying, synthesising, preparing and splitting the CT data."""
