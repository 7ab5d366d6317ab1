"""Building blocks the stacks share. Each builds into the scope it is given, adding no construct level of its own,
so the logical ids of what it creates are those the stack had before it was factored out."""
