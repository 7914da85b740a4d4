"""The encoders' defaults that command lines show, in a module that imports nothing: building the
``deep-speaker`` parser (``--help``, a usage error) must not wait for numpy or Keras. The modules that use them keep
these names (``encoders.deepspeaker.DEFAULT_BATCH_SIZE``, ``encoders.embedding_cache.EMBEDDING_CACHE_ENV``)."""

# The deep-speaker encoder's (encoders.deepspeaker) windowing of long utterances and its batch.
DEFAULT_WINDOW_SECONDS = 1.6
DEFAULT_HOP_SECONDS = 0.8
POOLINGS = ("windows", "utterance")  # --pooling: averaged windows, or one pass over the whole utterance
MAX_PIECE_SECONDS = 60.0  # --pooling utterance: longer utterances go through the network in pieces (memory)
DEFAULT_BATCH_SIZE = 32  # windows per predict call; larger gains nothing on CPU and costs memory
EMBEDDING_CACHE_ENV = "DEEP_SPEAKER_EMBEDDING_CACHE"  # the CLI's default for --embedding-cache
