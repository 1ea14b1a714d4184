"""The six concept sets of CLIP-Dissect (data/ of Trustworthy-ML-Lab/CLIP-dissect at 21e7697), verbatim."""
