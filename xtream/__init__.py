"""xtream: streaming cross-lingual topic modelling over Kafka.

The code lives in three folders at the repository's root, installed under this one name so that
they cannot collide with other projects' top-level ``model`` or ``stream``::

    xtream.model      the online topic model (embedder, k-means, XTRA); knows nothing of Kafka
    xtream.stream     Kafka sources and sinks, wire schemas, the snapshot store; knows nothing of torch
    xtream.consumers  the service that joins them: intake, training, publishing, HTTP API, CLI

In a checkout, ``xtream/model`` and its siblings are links to those folders.
"""
