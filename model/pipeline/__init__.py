"""The report's run (``visualize_all.py``): ``planning`` measures one photo per kind of work
(``estimate``) and fits the counts to a budget by one rule (``plan``); ``scripts`` runs a method
script in this process and hands back its figures and notes; ``report`` does the rest (train
when needed, the sections, the explorer, the page). Nothing in ``model`` imports this folder.
"""
