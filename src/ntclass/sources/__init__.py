"""Synapse sources (tables, CREMI folders, MongoDB) read in checked batches of one table
shape: `read` dispatches on the source type, `synapses` holds the table and CREMI readers
and the location checks, `mongo` the database reader and write-back."""
