"""The NeRF generator: hash-grid field, background, occupancy grid, cameras and volume renderer."""
