"""Enrollment and fast personalization (``avatar-engine enroll``; not built yet).

Intended role (MetaPortrait section 3.2): record ~30 s of the user with the webcam, prepare those
frames like the training data (:mod:`avatar_engine.data.prepare`), then adapt the neural renderer to that
one person in a few gradient steps from a Reptile meta-learned initialization, and save the
personalized weights (safetensors) next to the user's profile so ``start`` can load them. This
package will hold the recording step, the adaptation loop and the Reptile meta-training.
"""
