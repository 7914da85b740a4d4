"""Speaker encoders: audio in, embeddings out, behind one interface that every downstream workflow depends on."""
