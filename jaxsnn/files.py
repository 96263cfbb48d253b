"""Files: the one format of every artifact jaxsnn writes (a converted network, calibration statistics, thresholds, a
trained ANN's variables, the checkpoints of resumable jobs, training's included), and atomic writes (a file is the old
one or the complete new one, never half of either).

A jaxsnn file is a zip of a JSON header and ``.npy`` arrays, versioned and fingerprinted, never pickled; reading one
checks it and names what differs (see :class:`FormatError`). Write and read them with :func:`jaxsnn.save` /
:func:`jaxsnn.load`, :func:`jaxsnn.save_stats` / :func:`jaxsnn.load_stats`, :func:`jaxsnn.save_thresholds` /
:func:`jaxsnn.load_thresholds` and :func:`jaxsnn.training.save_variables` / :func:`jaxsnn.training.load_variables`;
:func:`info` says what a file is. :func:`write_npz` writes a plain ``.npz`` for programs that read NumPy files and
nothing else.
"""

from jaxsnn._src.files import FormatError, Node, atomic_write, fingerprint, info, write_json, write_npz

__all__ = ["FormatError", "Node", "atomic_write", "fingerprint", "info", "write_json", "write_npz"]
