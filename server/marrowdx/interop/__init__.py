"""Reports out to the lab and the archive: HL7 v2.5.1 ORU^R01, FHIR R4(B)
Bundle, DICOM Comprehensive SR (TID 1500) and Microscopy Bulk Simple
Annotations; MLLP transport. Plain functions of a stored case report
(``marrowdx.v1.CaseReport``) and of an order context the integration holds:
patient identifiers stay with the integration and never reach the service."""
