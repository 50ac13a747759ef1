"""Reading and writing NIfTI files and the folder layouts users bring (AbdomenAtlas, MSD, nnU-Net, manifest)."""
