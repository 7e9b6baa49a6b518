"""The registered DICOM model: pyfunc, model card, promotion gate, serving and the store."""
