"""Aligned face data: image folders, pairs, insightface formats, alignment and augmentation."""
