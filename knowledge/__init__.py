"""The knowledge base: loaders -> chunking -> embedding -> vector store -> search with citations."""
