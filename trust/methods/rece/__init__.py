"""RECE: UCE iterated with the adversarial embeddings it derives in closed form."""
