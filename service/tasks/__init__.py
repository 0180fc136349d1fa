"""One room per task (classify, generate, ...): each imports service.core, never another room."""
