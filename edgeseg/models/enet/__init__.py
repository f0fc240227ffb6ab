"""ENet (Paszke et al. 2016): the network and its training recipe."""
