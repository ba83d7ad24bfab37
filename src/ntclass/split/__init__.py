"""The split manifest: random, grouped and given splits (`assign`), and splits from older
Synister runs (`legacy`)."""
