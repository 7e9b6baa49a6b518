"""The hospital's network: pull a cohort from the PACS (DICOMweb, DIMSE), send answers back."""
