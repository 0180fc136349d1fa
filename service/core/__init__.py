"""Task-free serving machinery, shared by every task room (service/tasks/<task>); imports no task."""
