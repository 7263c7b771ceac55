"""Documents: PDF text extraction under limits, chunking, and the vector store of
``pdfVectorStore`` (Qdrant), owned by one deployment."""
