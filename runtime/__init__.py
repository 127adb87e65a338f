"""The live engine: camera in, avatar out, in real time.

Capture threads and camera sources (:mod:`.capture`, :mod:`.track_camera`), latest-value slots
(:mod:`.slots`), the engine and its pacing (:mod:`.engine`), outputs: preview window, virtual
camera, recording (:mod:`.sinks`), WebRTC tracks, microphone and the signalling server
(:mod:`.webrtc_tracks`, :mod:`.audio`, :mod:`.server`), ring buffers and streaming state of causal
networks (:mod:`.ring_buffer`), inference backends (:mod:`.backends`), and ``avatar-engine doctor``
(:mod:`.doctor`).
"""
