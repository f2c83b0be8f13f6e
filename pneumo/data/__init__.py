"""Reading, caching, splitting and serving images: everything between a file on disk and a batch.

`readers.read_image` is the one entry for reading a file: `pillow_reader` for JPEG/PNG, `dicom_reader` for
DICOM (with `dicom_header`, `dicom_pixels` and `dicom_luts` for the header repairs, pixel layout and lookup
tables archives need), all sharing `image_formats`. `cache` decodes a set once into a memory-mapped array;
`splits` makes patient-grouped splits; `sampling` orders batches; `tables` reads label CSVs; `labels` says
what the classes are; `sources` say where a data set's files, labels and patients come from, and the one
DataModule serves them. Imports only `pneumo.config`/`pneumo.paths` and `pneumo.demo` (to write the demo
sets), never models, training, evaluation or tracking.
"""
