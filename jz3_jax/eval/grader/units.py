"""Words that may follow an answer without changing it (units, counted things) and words that are
answers themselves; the strict grader strips the first and keeps the second."""

from __future__ import annotations

_UNITS = """
unit units square cubic sq cu linear
mm cm m km in ft yd mi inch inches foot feet yard yards mile miles meter meters metre metres millimeter millimeters
centimeter centimeters kilometer kilometers mph kph kmh
mg g kg gram grams kilogram kilograms milligram milligrams lb lbs pound pounds ounce ounces oz ton tons tonne tonnes
ml l liter liters litre litres milliliter milliliters gallon gallons quart quarts pint pints cup cups
s sec secs second seconds min mins minute minutes h hr hrs hour hours day days week weeks month months year years
decade decades century centuries
dollar dollars cent cents euro euros yuan penny pennies nickel nickels dime dimes quarter quarters
degree degrees deg radian radians rad
percent percentage points point
people person persons student students child children kid kids boy boys girl girls man men woman women
apple apples orange oranges egg eggs book books page pages card cards ball balls marble marbles coin coins
candy candies cookie cookies cupcake cupcakes cake cakes pie pies slice slices piece pieces box boxes bag bags
car cars bike bikes bicycle bicycles ticket tickets toy toys game games stamp stamps sticker stickers
flower flowers tree trees animal animals dog dogs cat cats bird birds fish chicken chickens cow cows sheep
times ways way possibilities outcomes arrangements combinations integers numbers digits
cm2 m2 km2 ft2 in2 cm3 m3
"""
UNIT_WORDS = frozenset(_UNITS.split())

# Words that are an answer on their own (or join answers), never prose to skip.
ANSWER_WORDS = frozenset("""
and or yes no true false even odd none undefined infinity infinite impossible never always
all real pi inf
""".split())

# Words after a number that change its value: never stripped as units.
MAGNITUDES = {"hundred": 100, "thousand": 1000, "million": 10 ** 6, "billion": 10 ** 9, "trillion": 10 ** 12,
              "dozen": 12}
NOT_UNITS = frozenset("""
hundred thousand million billion trillion dozen squared cubed factorial
half halves third thirds fourth fourths fifth fifths sixth sixths seventh sevenths eighth eighths
ninth ninths tenth tenths hundredth hundredths thousandth thousandths
""".split())
