"""The model engine, split as Keras splits it.

``graph``
    symbolic tensors (``cylstm.Input``), the nodes that calling a layer on them
    records, and :class:`~cylstm.engine.graph.GraphPlan`: a functional model's
    graph in topological order, run forward and backward as a flat list of steps.
``model``
    :class:`~cylstm.engine.model.Model`: weights, structure, saving and the
    functional constructor ``Model(inputs, outputs)``; ``Sequential`` is one.
``trainer``
    ``compile``/``fit``/``evaluate``/``predict`` and the train/test/predict steps.
``data_adapters``
    arrays, lists of batches, iterables, generators and ``PyDataset`` behind one
    interface.
``epoch_iterator``
    one epoch's batches of an adapter, with ``steps_per_epoch``.
``tbptt``
    ``fit(tbptt=k)``: a window iterator over the epoch iterator's batches, the
    LSTMs carrying (h, c) from one window to the next.
``bucketing``
    ``fit(bucket_by_length=True)``: an array adapter that groups samples by their
    masked length and cuts each batch after its longest sample.
"""
