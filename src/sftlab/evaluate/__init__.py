"""Before/after evaluation: side-by-side generations, held-out response NLL, behaviour checks."""
