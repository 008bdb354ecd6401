"""Adapters for RAG frameworks, each bound to a knowledge Session (a principal's view is all the
framework sees). Import the one you need; each needs its extra, and the core never imports them:

    from knowledge.adapters.langchain import KnowledgeVectorStore, KnowledgeGraphRetriever   # [langchain]
    from knowledge.adapters.llamaindex import KnowledgeVectorStore, KnowledgeRetriever       # [llamaindex]

`knowledge.adapters.filters` is the metadata filter language both accept (LlamaIndex MetadataFilters
are translated into it).
"""
