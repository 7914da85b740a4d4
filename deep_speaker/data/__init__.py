"""Speech in, features out: audio reading, the Deep Speaker filterbank, corpus layouts, the feature cache, training inputs."""
