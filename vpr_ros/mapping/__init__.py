"""The place map and how it is built: keyframe selection, embedding, sessions, the map tools."""
