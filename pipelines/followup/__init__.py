"""Follow-up reading: the clinical rules applied to a lung-nodule result and its prior.

Pure functions over findings and measurements (no torch, no DICOM, no node): ``brock`` (PanCan malignancy
risk), ``lungrads`` (Lung-RADS v2022 category), ``lungs`` (coarse lung mask: centroid, emphysema),
``tracking`` (alignment, matching, growth, doubling time) and ``assessment`` (all of them for one exam).
The node imports them cheaply; the image model in ``pipelines.lung_nodule`` is only consumed.
"""
