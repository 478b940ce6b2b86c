"""listener"""
