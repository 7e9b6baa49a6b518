"""The synthetic demo cohort: vertebra CT phantoms with MM or OMBT lesions, as DICOM."""
