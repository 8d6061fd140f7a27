"""Wire formats: raw decoders and validation, the generated sanitized writer, the sanitized decoder,
schema evolution."""
