"""The on-disk contract both packages share, and the only code that knows it.

* :mod:`~plankton_data.format.tar` - the WebDataset tar layout: writing samples, reading member headers;
* :mod:`~plankton_data.format.manifest` - the Parquet manifest schema, reading and writing it;
* :mod:`~plankton_data.format.index` - ``index.json``: the shard folder's list of tars, its statistics, and
  where its manifest is;
* :mod:`~plankton_data.format.keys` - sample keys and ``pixel_sha256``;
* :mod:`~plankton_data.format.atomic` - writes that are either complete or absent.

Nothing here imports torch or any other part of ``plankton_data`` but :mod:`plankton_data.errors`.
"""
