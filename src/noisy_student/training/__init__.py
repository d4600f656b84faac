"""Training: the Noisy Student step (``task``), the loop (``loop``) over one batch interface (``batches``:
images in memory; ``streams``: read from the tars), the recipe of one run (``recipe``) and what it trains on
(``sources``), run locks (``locks``), FixRes (``fixres``). Import from the modules: nothing is re-exported."""
