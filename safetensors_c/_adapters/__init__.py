"""One adapter per framework: the only code that knows that framework.

Each module turns the neutral reader's NumPy arrays into the framework's
arrays (zero-copy where the framework can adopt host memory) and the
framework's arrays into :class:`safetensors_c._writer.Tensor` values for the
writer. They are loaded on demand through :mod:`safetensors_c._frameworks`,
so importing safetensors_c imports no framework. Each defines:

``NAME``, ``LABEL``
    the canonical framework name and the name used in messages;
``placement(device)``
    checks a ``device=`` argument; returns what ``to_array`` needs;
``check_code(name, code, shape)``
    SafetensorError naming the dtype and the framework when the framework
    has no such dtype (checked before any data is read);
``to_array(name, code, array, placement)``
    the framework array for a NumPy array from the reader;
``check_tensors(tensors)``
    checks on the whole dict before saving (may do nothing);
``from_array(name, value)``
    the :class:`~safetensors_c._writer.Tensor` to write for one value;
``index(index)``
    an index of the framework's (e.g. holding its tensors) as NumPy's.
``COPIES_READ_ONLY`` (optional, default False)
    True when ``to_array`` itself copies a read-only array (once), so that
    ``load(bytes)`` need not copy the image first.
"""
