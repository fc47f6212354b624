"""UCE: unified concept editing (closed form, training-free)."""
